import os
import sys

# tests import their float64 references from tests/helpers.py
sys.path.insert(0, os.path.dirname(__file__))
