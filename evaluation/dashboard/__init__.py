"""The results dashboard (``ecoflap dashboard``): leaderboard, curves, runs and comparisons over the results database.

``create_app(url)`` in app.py builds the read-only Starlette app; store.py opens the database read-only.
"""
