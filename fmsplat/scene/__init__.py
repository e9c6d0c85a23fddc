"""fmsplat.scene"""
