"""fedpeft.simulations"""
