"""Hub adapter: model folders, Hub repos, model cards, known models and legacy checkpoint conversion.

Kept import-free so that ``models.base`` can use the mixin without a circular import.
"""
