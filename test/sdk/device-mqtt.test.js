'use strict';
// Device registration with the official Node device SDK over MQTT over TLS on 8883 (azure-iot-provisioning-device-mqtt Mqtt)
// against a running dpsd. The scenarios are in lib/device-suite.js.

require('./lib/device-suite').defineDeviceSuite('mqtt');
