"""What runs inside a pod: the built-in echo server, and how containers are started."""
