
J
4
ed0e56ab8b2a0ecb 9e1e92999904ff1da41a6e30eb6615cd
fe9062d0fff82a66@
	
 ((a77e7c793abc0d0c923a9afb275058e2fe57a198