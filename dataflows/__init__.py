"""riskguard.dataflows"""
