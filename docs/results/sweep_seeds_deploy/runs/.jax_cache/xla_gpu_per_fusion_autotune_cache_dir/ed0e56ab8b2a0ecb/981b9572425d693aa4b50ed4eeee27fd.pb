
J
4
ed0e56ab8b2a0ecb 981b9572425d693aa4b50ed4eeee27fd
fe9062d0fff82a66@
	
 ((a77e7c793abc0d0c923a9afb275058e2fe57a198