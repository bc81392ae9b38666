
J
4
ed0e56ab8b2a0ecb ba2a49bc3138d6096ac79487d9a14b71
fe9062d0fff82a66B
	
 (0(a77e7c793abc0d0c923a9afb275058e2fe57a198