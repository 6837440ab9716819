"""scanqc.serving"""
