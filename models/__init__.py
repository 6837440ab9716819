"""scanqc.models"""
