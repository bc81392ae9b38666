
J
4
ed0e56ab8b2a0ecb 6ea1af3c415b78515816624717d51fc2
fe9062d0fff82a66B
	
 (0(a77e7c793abc0d0c923a9afb275058e2fe57a198