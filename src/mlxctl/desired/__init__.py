"""Desired state: a validated stack resolved into the exact services to run (ports, argv,
hashes, budget).
"""
