"""fmsplat.foundation"""
