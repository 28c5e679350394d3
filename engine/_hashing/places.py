"""Place names as Meta wants them: US states as their two-letter codes, countries as ISO 3166-1
alpha-2 codes, each reachable by code and by common name (letters only, lowercase).
"""

from __future__ import annotations

# Letters-only lowercase name -> USPS code; the codes map to themselves below.
US_STATES: dict[str, str] = {
    "alabama": "al", "alaska": "ak", "arizona": "az", "arkansas": "ar", "california": "ca",
    "colorado": "co", "connecticut": "ct", "delaware": "de", "florida": "fl", "georgia": "ga",
    "hawaii": "hi", "idaho": "id", "illinois": "il", "indiana": "in", "iowa": "ia",
    "kansas": "ks", "kentucky": "ky", "louisiana": "la", "maine": "me", "maryland": "md",
    "massachusetts": "ma", "michigan": "mi", "minnesota": "mn", "mississippi": "ms",
    "missouri": "mo", "montana": "mt", "nebraska": "ne", "nevada": "nv", "newhampshire": "nh",
    "newjersey": "nj", "newmexico": "nm", "newyork": "ny", "northcarolina": "nc",
    "northdakota": "nd", "ohio": "oh", "oklahoma": "ok", "oregon": "or", "pennsylvania": "pa",
    "rhodeisland": "ri", "southcarolina": "sc", "southdakota": "sd", "tennessee": "tn",
    "texas": "tx", "utah": "ut", "vermont": "vt", "virginia": "va", "washington": "wa",
    "westvirginia": "wv", "wisconsin": "wi", "wyoming": "wy", "districtofcolumbia": "dc",
    "washingtondc": "dc", "puertorico": "pr", "guam": "gu", "usvirginislands": "vi",
    "virginislands": "vi", "virginislandsus": "vi", "americansamoa": "as",
    "northernmarianaislands": "mp", "unitedstatesminoroutlyingislands": "um",
}  # fmt: skip


US_STATES.update({code: code for code in set(US_STATES.values())})


# ISO 3166-1 alpha-2:alpha-3, all 249 codes (from the iso-codes package).
_ISO = (
    "ad:and ae:are af:afg ag:atg ai:aia al:alb am:arm ao:ago aq:ata ar:arg as:asm at:aut au:aus "
    "aw:abw ax:ala az:aze ba:bih bb:brb bd:bgd be:bel bf:bfa bg:bgr bh:bhr bi:bdi bj:ben bl:blm "
    "bm:bmu bn:brn bo:bol bq:bes br:bra bs:bhs bt:btn bv:bvt bw:bwa by:blr bz:blz ca:can cc:cck "
    "cd:cod cf:caf cg:cog ch:che ci:civ ck:cok cl:chl cm:cmr cn:chn co:col cr:cri cu:cub cv:cpv "
    "cw:cuw cx:cxr cy:cyp cz:cze de:deu dj:dji dk:dnk dm:dma do:dom dz:dza ec:ecu ee:est eg:egy "
    "eh:esh er:eri es:esp et:eth fi:fin fj:fji fk:flk fm:fsm fo:fro fr:fra ga:gab gb:gbr gd:grd "
    "ge:geo gf:guf gg:ggy gh:gha gi:gib gl:grl gm:gmb gn:gin gp:glp gq:gnq gr:grc gs:sgs gt:gtm "
    "gu:gum gw:gnb gy:guy hk:hkg hm:hmd hn:hnd hr:hrv ht:hti hu:hun id:idn ie:irl il:isr im:imn "
    "in:ind io:iot iq:irq ir:irn is:isl it:ita je:jey jm:jam jo:jor jp:jpn ke:ken kg:kgz kh:khm "
    "ki:kir km:com kn:kna kp:prk kr:kor kw:kwt ky:cym kz:kaz la:lao lb:lbn lc:lca li:lie lk:lka "
    "lr:lbr ls:lso lt:ltu lu:lux lv:lva ly:lby ma:mar mc:mco md:mda me:mne mf:maf mg:mdg mh:mhl "
    "mk:mkd ml:mli mm:mmr mn:mng mo:mac mp:mnp mq:mtq mr:mrt ms:msr mt:mlt mu:mus mv:mdv mw:mwi "
    "mx:mex my:mys mz:moz na:nam nc:ncl ne:ner nf:nfk ng:nga ni:nic nl:nld no:nor np:npl nr:nru "
    "nu:niu nz:nzl om:omn pa:pan pe:per pf:pyf pg:png ph:phl pk:pak pl:pol pm:spm pn:pcn pr:pri "
    "ps:pse pt:prt pw:plw py:pry qa:qat re:reu ro:rou rs:srb ru:rus rw:rwa sa:sau sb:slb sc:syc "
    "sd:sdn se:swe sg:sgp sh:shn si:svn sj:sjm sk:svk sl:sle sm:smr sn:sen so:som sr:sur ss:ssd "
    "st:stp sv:slv sx:sxm sy:syr sz:swz tc:tca td:tcd tf:atf tg:tgo th:tha tj:tjk tk:tkl tl:tls "
    "tm:tkm tn:tun to:ton tr:tur tt:tto tv:tuv tw:twn tz:tza ua:ukr ug:uga um:umi us:usa uy:ury "
    "uz:uzb va:vat vc:vct ve:ven vg:vgb vi:vir vn:vnm vu:vut wf:wlf ws:wsm ye:yem yt:myt za:zaf "
    "zm:zmb zw:zwe"
)


# Common English names (letters only, lowercase) -> alpha-2; codes are added from _ISO below.
COUNTRIES: dict[str, str] = {
    "unitedstates": "us", "unitedstatesofamerica": "us", "america": "us", "us": "us",
    "unitedkingdom": "gb", "uk": "gb", "greatbritain": "gb", "britain": "gb", "england": "gb",
    "scotland": "gb", "wales": "gb", "northernireland": "gb", "germany": "de", "france": "fr",
    "spain": "es", "italy": "it", "canada": "ca", "mexico": "mx", "brazil": "br", "india": "in",
    "japan": "jp", "china": "cn", "australia": "au", "netherlands": "nl", "thenetherlands": "nl",
    "holland": "nl", "belgium": "be", "switzerland": "ch", "austria": "at", "sweden": "se",
    "norway": "no", "denmark": "dk", "finland": "fi", "iceland": "is", "ireland": "ie",
    "portugal": "pt", "poland": "pl", "czechrepublic": "cz", "czechia": "cz", "hungary": "hu",
    "romania": "ro", "greece": "gr", "turkey": "tr", "turkiye": "tr", "russia": "ru",
    "ukraine": "ua", "israel": "il", "unitedarabemirates": "ae", "uae": "ae",
    "saudiarabia": "sa", "egypt": "eg", "southafrica": "za", "nigeria": "ng", "kenya": "ke",
    "morocco": "ma", "argentina": "ar", "chile": "cl", "colombia": "co", "peru": "pe",
    "venezuela": "ve", "southkorea": "kr", "korea": "kr", "republicofkorea": "kr",
    "taiwan": "tw", "hongkong": "hk", "singapore": "sg", "malaysia": "my", "indonesia": "id",
    "thailand": "th", "vietnam": "vn", "philippines": "ph", "pakistan": "pk",
    "bangladesh": "bd", "newzealand": "nz", "puertorico": "pr", "luxembourg": "lu",
    "croatia": "hr", "serbia": "rs", "bulgaria": "bg", "slovakia": "sk", "slovenia": "si",
    "estonia": "ee", "latvia": "lv", "lithuania": "lt",
}  # fmt: skip


for _pair in _ISO.split():
    _a2, _a3 = _pair.split(":")
    COUNTRIES.setdefault(_a2, _a2)
    COUNTRIES.setdefault(_a3, _a2)
