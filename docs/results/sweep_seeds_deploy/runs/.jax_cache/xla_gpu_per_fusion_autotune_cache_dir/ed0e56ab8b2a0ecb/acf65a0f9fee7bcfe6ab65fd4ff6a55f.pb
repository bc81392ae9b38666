
J
4
ed0e56ab8b2a0ecb acf65a0f9fee7bcfe6ab65fd4ff6a55f
fe9062d0fff82a66@
	
 ((a77e7c793abc0d0c923a9afb275058e2fe57a198