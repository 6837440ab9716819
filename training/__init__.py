"""scanqc.training"""
