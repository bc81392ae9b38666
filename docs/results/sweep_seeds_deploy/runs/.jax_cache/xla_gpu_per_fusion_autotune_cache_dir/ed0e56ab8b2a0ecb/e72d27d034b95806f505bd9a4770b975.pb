
J
4
ed0e56ab8b2a0ecb e72d27d034b95806f505bd9a4770b975
fe9062d0fff82a66=
	
 ((a77e7c793abc0d0c923a9afb275058e2fe57a198