"""riskguard.connectors"""
