"""fmsplat.eval"""
