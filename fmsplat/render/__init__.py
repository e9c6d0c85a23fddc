"""fmsplat.render"""
