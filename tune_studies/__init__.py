"""The shipped study files; pyproject.toml installs this folder as the package lrwa.studies."""
