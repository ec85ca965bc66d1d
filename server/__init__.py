"""fedpeft.server"""
