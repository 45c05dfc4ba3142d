"""Main (interface-creating) CNI plugins."""
