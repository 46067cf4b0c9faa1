"""The shipped study files, installed beside lrwa so `lrwa tune quickstart` works from a wheel."""
