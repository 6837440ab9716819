"""scanqc.evaluation"""
