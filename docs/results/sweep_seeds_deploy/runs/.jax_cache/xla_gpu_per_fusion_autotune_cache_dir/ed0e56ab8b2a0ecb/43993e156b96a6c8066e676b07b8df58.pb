
J
4
ed0e56ab8b2a0ecb 43993e156b96a6c8066e676b07b8df58
fe9062d0fff82a66@
	
 ((a77e7c793abc0d0c923a9afb275058e2fe57a198