# volt.run=hwrng: read the virtio-rng device through /dev/hwrng; prints
# VOLT-HWRNG-OK bytes=N rng=<current hw_random driver> a=<16 bytes hex> b=<next 16 bytes hex>
# or VOLT-HWRNG-FAILED with the same fields.
rng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
bytes=$(head -c 4096 /dev/hwrng 2>/dev/null | wc -c)
a=$(head -c 16 /dev/hwrng 2>/dev/null | od -An -tx1 | tr -d ' \n')
b=$(head -c 16 /dev/hwrng 2>/dev/null | od -An -tx1 | tr -d ' \n')
if [ "$bytes" = 4096 ] && [ ${#a} = 32 ] && [ "$a" != "$b" ]; then
  echo "VOLT-HWRNG-OK bytes=$bytes rng=$rng a=$a b=$b"
else
  echo "VOLT-HWRNG-FAILED bytes=$bytes rng=$rng a=$a b=$b"
fi
