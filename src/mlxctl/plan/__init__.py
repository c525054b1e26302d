"""The pure planner: `plan(desired, observed) -> Plan`, with every action's cause. No I/O, no
clock.
"""
