"""fedpeft.client"""
