"""scanqc.datasets"""
