
J
4
ed0e56ab8b2a0ecb f2f35f2e2915683c8eb3a90a3bed93be
fe9062d0fff82a66C
€(08@X(a77e7c793abc0d0c923a9afb275058e2fe57a198