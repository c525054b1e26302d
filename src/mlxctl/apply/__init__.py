"""The executor: applies a plan's actions through the machine interfaces and records each as a
fact.
"""
