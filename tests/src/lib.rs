//! Helpers shared by hull end-to-end tests.
