"""fmsplat.gaussians"""
