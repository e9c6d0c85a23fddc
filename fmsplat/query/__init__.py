"""fmsplat.query"""
