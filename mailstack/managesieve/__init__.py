"""ManageSieve (RFC 5804): users manage their Sieve scripts remotely (Thunderbird's sieve
add-on, Roundcube's managesieve plugin, sieve-connect).  A protocol package: it reaches the
store only through :mod:`mailstack.store`'s interface and the scripts through
:mod:`mailstack.sieve.scripts`; it imports no other protocol package."""
