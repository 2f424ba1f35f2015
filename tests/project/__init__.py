"""The project itself: the docs' snippets, the examples, the package's floors, the wheel."""
