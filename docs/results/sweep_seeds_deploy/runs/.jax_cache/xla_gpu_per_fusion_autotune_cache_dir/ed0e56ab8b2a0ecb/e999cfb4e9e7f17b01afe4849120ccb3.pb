
J
4
ed0e56ab8b2a0ecb e999cfb4e9e7f17b01afe4849120ccb3
fe9062d0fff82a66?
	
 (0(a77e7c793abc0d0c923a9afb275058e2fe57a198