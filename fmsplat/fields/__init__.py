"""fmsplat.fields"""
