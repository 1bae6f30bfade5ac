"""riskguard.operators"""
