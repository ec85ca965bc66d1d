"""fedpeft.fedpeft"""
