
J
4
ed0e56ab8b2a0ecb fabc8636f00b96d1c8fcce5b58aaea17
fe9062d0fff82a66?
	
 (0(a77e7c793abc0d0c923a9afb275058e2fe57a198