
J
4
ed0e56ab8b2a0ecb 097c4969dc5f82ff6d24604b4d405e59
fe9062d0fff82a66@
	
 ((a77e7c793abc0d0c923a9afb275058e2fe57a198