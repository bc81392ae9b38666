
J
4
ed0e56ab8b2a0ecb 6ec4c61b14340220c4ec1196aa5450b5
fe9062d0fff82a66@
	
 ((a77e7c793abc0d0c923a9afb275058e2fe57a198