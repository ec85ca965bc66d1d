"""fedpeft.protos"""
