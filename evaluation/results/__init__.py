"""The results database: runs, per-layer allocations, per-task metrics, artefacts and tags (SQLAlchemy + Alembic).

``ResultsStore`` (store.py) records results documents and answers leaderboard, comparison and export
queries; regress.py checks a candidate's metrics against a baseline or absolute floors.
"""
