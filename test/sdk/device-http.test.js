'use strict';
// Device registration with the official Node device SDK over HTTPS (azure-iot-provisioning-device-http Http)
// against a running dpsd. The scenarios are in lib/device-suite.js.

require('./lib/device-suite').defineDeviceSuite('http');
