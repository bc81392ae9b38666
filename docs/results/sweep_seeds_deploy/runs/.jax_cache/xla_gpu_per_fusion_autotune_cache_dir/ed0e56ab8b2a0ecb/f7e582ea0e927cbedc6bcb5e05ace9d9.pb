
J
4
ed0e56ab8b2a0ecb f7e582ea0e927cbedc6bcb5e05ace9d9
fe9062d0fff82a66=
	
 ((a77e7c793abc0d0c923a9afb275058e2fe57a198