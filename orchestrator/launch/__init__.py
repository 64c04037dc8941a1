"""Driver side: start Ray (embedded or remote), launch Ray Train, follow progress."""
