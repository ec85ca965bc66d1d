"""fedpeft.export"""
